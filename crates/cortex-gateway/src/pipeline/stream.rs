//! Streams: each upstream chunk goes to the client as it arrives — unchanged and uncopied when
//! door and provider speak one dialect, while the SSE scanner reads usage from it; rewritten
//! event by event by a `cortex-wire` translator (which reads the usage) when they do not. When
//! the stream ends — normally, on an upstream error, or because the client went away and the
//! body was dropped — the usage record is written and the concurrency slot freed, exactly once.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Bytes;
use cortex_limits::SlotGuard;
use cortex_upstream::{ModelRoute, UpstreamBody};
use cortex_wire::translate::StreamTranslator;
use cortex_wire::{SseUsageScanner, TokenUsage};
use futures_util::Stream;

use crate::metrics as m;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::Response;

use cortex_guard::Guard;

use crate::cache::CachedAnswer;

use super::cached::Caching;
use super::context::{answer_with_room, UsageContext};
use super::guard_stream::StreamFilter;

/// What a stream may carry besides its meter: the answer's guardrails (the compiled policy and
/// its id) and the cache entry it fills.
pub(super) struct Extras {
    pub guard: Option<(Arc<Guard>, String)>,
    pub caching: Option<Caching>,
}

const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// A stream: passed through chunk by chunk; its usage is recorded and the request counted when
/// it ends. The strings move to the stream's context, which leaves `context` finished: the
/// error path must not record a second usage row for this request.
pub(super) fn streamed(
    context: &mut UsageContext,
    route: Arc<ModelRoute>,
    slot: Option<SlotGuard>,
    body: UpstreamBody,
    translator: Option<Box<dyn StreamTranslator>>,
    extras: Extras,
) -> Response {
    context.counted_by_stream = true;
    let meter = match translator {
        Some(translator) => Meter::Translate(translator),
        None => Meter::Scan(SseUsageScanner::new()),
    };
    let mut finish = StreamFinish::new(
        UsageContext {
            plane: context.plane.clone(),
            principal: context.principal.clone(),
            request_id: std::mem::take(&mut context.request_id),
            endpoint: context.endpoint,
            model: std::mem::take(&mut context.model),
            provider: std::mem::take(&mut context.provider),
            client_ip: std::mem::take(&mut context.client_ip),
            started: context.started,
            started_millis: context.started_millis,
            attempts: context.attempts,
            reservation: context.reservation.take(),
            meter: context.meter.take(),
            ttft: None,
            counted_by_stream: true,
            cached: false,
            trace: context.trace.take(),
        },
        route,
        slot,
        meter,
    );
    let endpoint = finish.context.endpoint;
    finish.filter = extras
        .guard
        .map(|(guard, policy_id)| (StreamFilter::new(endpoint, guard), policy_id));
    finish.collect = extras.caching.map(|caching| Collector {
        max_bytes: finish.context.plane.cache.max_entry_bytes(),
        caching,
        chunks: Vec::new(),
        bytes: 0,
        overflowed: false,
    });
    let body = Body::from_stream(MeteredStream::new(body, finish));
    let mut response = answer_with_room(body);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies in front of Cortex not to buffer the stream either.
    headers.insert(X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
    response
}

/// Reads a stream's usage: by scanning what passes unchanged, or from the translator that
/// rewrites it.
pub enum Meter {
    Scan(SseUsageScanner),
    Translate(Box<dyn StreamTranslator>),
}

impl Meter {
    fn usage(&self) -> Option<TokenUsage> {
        match self {
            Meter::Scan(scanner) => scanner.usage(),
            Meter::Translate(translator) => translator.usage(),
        }
    }
}

/// The chunks of a stream as the client got them, for the cache: kept while they fit in an
/// entry.
struct Collector {
    caching: Caching,
    chunks: Vec<Bytes>,
    bytes: u64,
    max_bytes: u64,
    overflowed: bool,
}

impl Collector {
    fn push(&mut self, chunk: &Bytes) {
        if self.overflowed {
            return;
        }
        self.bytes += chunk.len() as u64;
        if self.bytes > self.max_bytes {
            self.overflowed = true;
            self.chunks = Vec::new();
            return;
        }
        self.chunks.push(chunk.clone());
    }
}

/// Runs once when the stream is finished or dropped.
pub struct StreamFinish {
    context: UsageContext,
    route: Arc<ModelRoute>,
    meter: Meter,
    /// Released on drop, which frees the slot for the key's next stream.
    _slot: Option<SlotGuard>,
    outcome: Option<u16>,
    /// The answer's guardrails and the policy they come from.
    filter: Option<(StreamFilter, String)>,
    collect: Option<Collector>,
}

impl StreamFinish {
    pub fn new(
        context: UsageContext,
        route: Arc<ModelRoute>,
        slot: Option<SlotGuard>,
        meter: Meter,
    ) -> Self {
        m::hot().active_streams.increment(1.0);
        Self {
            context,
            route,
            meter,
            _slot: slot,
            outcome: None,
            filter: None,
            collect: None,
        }
    }
}

impl StreamFinish {
    /// What the client gets of `bytes`: through the answer's guardrails (`None` while they
    /// hold everything back), and kept for the cache.
    fn outgoing(&mut self, bytes: Bytes) -> Option<Bytes> {
        let bytes = match &mut self.filter {
            Some((filter, _)) => {
                let mut out = Vec::new();
                filter.feed(&bytes, &mut out);
                if out.is_empty() {
                    return None;
                }
                Bytes::from(out)
            }
            None => bytes,
        };
        if let Some(collect) = &mut self.collect {
            collect.push(&bytes);
        }
        if !bytes.is_empty() {
            self.first_byte_sent();
        }
        Some(bytes)
    }

    /// Whether a guardrail ended the stream.
    fn blocked(&self) -> bool {
        self.filter
            .as_ref()
            .is_some_and(|(filter, _)| filter.blocked().is_some())
    }

    /// The first byte of the answer is going to the client: the time to first token, taken
    /// once per stream (the usage record keeps it, the provider's histogram counts it).
    fn first_byte_sent(&mut self) {
        if self.context.ttft.is_some() {
            return;
        }
        let ttft = self.context.started.elapsed();
        self.context.ttft = Some(ttft);
        if let Some(meter) = &self.context.meter {
            meter.ttft.record(ttft.as_secs_f64());
        }
    }
}

impl Drop for StreamFinish {
    fn drop(&mut self) {
        m::hot().active_streams.decrement(1.0);
        // 499: the client closed the connection before the stream ended (nginx's convention).
        let status = self.outcome.unwrap_or(499);
        let code = match status {
            200..=299 => None,
            499 => Some(m::CLIENT_CLOSED),
            400 => Some("guardrail_blocked"),
            _ => Some("upstream_error"),
        };
        m::hot().count_request(m::door(Some(self.context.endpoint)), status, code);
        let usage = self.meter.usage();
        if let Some((filter, policy_id)) = &mut self.filter {
            super::guard::report(&self.context, policy_id, "response", filter.take_hits());
        }
        // Only a whole answer is kept: one the provider finished and no guardrail cut.
        if let (Some(collect), 200) = (self.collect.take(), status) {
            if !collect.overflowed {
                let answer = CachedAnswer::streamed(
                    collect.chunks,
                    usage.unwrap_or_default(),
                    &*self.context.provider,
                );
                collect.caching.store(&self.context, answer);
            }
        }
        self.context.finish(Some(&self.route), status, usage);
        if let Some(trace) = self.context.trace.take() {
            trace.end(Some("stream"), status, code);
        }
    }
}

pub struct MeteredStream {
    inner: UpstreamBody,
    finish: Option<StreamFinish>,
    /// The upstream failed mid-way: after the translator's closing events, the client's
    /// stream ends in an error too (a cut connection, as when nothing is translated).
    failed: bool,
}

impl MeteredStream {
    pub fn new(inner: UpstreamBody, finish: StreamFinish) -> Self {
        Self {
            inner,
            finish: Some(finish),
            failed: false,
        }
    }

    /// The stream is over (`outcome` is its status): a translator's closing events and what
    /// the answer's guardrails still held, if any, are the last chunk; the usage is recorded
    /// when `finish` drops.
    fn end(&mut self, outcome: u16) -> Option<Bytes> {
        let mut finish = self.finish.take()?;
        let mut out = Vec::new();
        if let Meter::Translate(translator) = &mut finish.meter {
            translator.finish(&mut out);
        }
        if let Some((filter, _)) = &mut finish.filter {
            let mut last = Vec::new();
            filter.feed(&out, &mut last);
            filter.finish(&mut last);
            out = last;
        }
        finish.outcome = Some(if finish.blocked() { 400 } else { outcome });
        if out.is_empty() {
            return None;
        }
        let out = Bytes::from(out);
        if let Some(collect) = &mut finish.collect {
            collect.push(&out);
        }
        finish.first_byte_sent();
        Some(out)
    }

    /// `bytes` go to the client as `outgoing` makes them; a guardrail that cut the stream
    /// ends it after them.
    fn send(&mut self, bytes: Bytes) -> Option<Bytes> {
        let finish = self.finish.as_mut()?;
        let out = finish.outgoing(bytes);
        if finish.blocked() {
            if let Some(mut finish) = self.finish.take() {
                finish.outcome = Some(400);
            }
        }
        out
    }
}

impl Stream for MeteredStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if self.finish.is_none() {
                if std::mem::take(&mut self.failed) {
                    return Poll::Ready(Some(Err(std::io::Error::other("upstream stream failed"))));
                }
                return Poll::Ready(None);
            }
            match self.inner.poll_chunk(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => {
                    let Some(finish) = self.finish.as_mut() else {
                        continue;
                    };
                    let bytes = match &mut finish.meter {
                        Meter::Scan(scanner) => {
                            scanner.feed(&chunk);
                            chunk
                        }
                        Meter::Translate(translator) => {
                            let mut out = Vec::new();
                            translator.feed(&chunk, &mut out);
                            // A chunk that completed no event gives the client nothing yet.
                            if out.is_empty() {
                                continue;
                            }
                            Bytes::from(out)
                        }
                    };
                    if let Some(out) = self.send(bytes) {
                        return Poll::Ready(Some(Ok(out)));
                    }
                }
                Poll::Ready(Some(Err(error))) => {
                    tracing::warn!(%error, "upstream stream failed mid-way");
                    metrics::counter!(m::UPSTREAM_ERRORS, "kind" => "stream").increment(1);
                    self.failed = true;
                    if let Some(last) = self.end(502) {
                        return Poll::Ready(Some(Ok(last)));
                    }
                }
                Poll::Ready(None) => {
                    if let Some(last) = self.end(200) {
                        return Poll::Ready(Some(Ok(last)));
                    }
                }
            }
        }
    }
}
