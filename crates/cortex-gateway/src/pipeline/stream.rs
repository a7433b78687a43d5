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

use super::meter::{answer_with_room, UsageContext};

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
) -> Response {
    context.counted_by_stream = true;
    let meter = match translator {
        Some(translator) => Meter::Translate(translator),
        None => Meter::Scan(SseUsageScanner::new()),
    };
    let finish = StreamFinish::new(
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
            trace: context.trace.take(),
        },
        route,
        slot,
        meter,
    );
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

/// Runs once when the stream is finished or dropped.
pub struct StreamFinish {
    context: UsageContext,
    route: Arc<ModelRoute>,
    meter: Meter,
    /// Released on drop, which frees the slot for the key's next stream.
    _slot: Option<SlotGuard>,
    outcome: Option<u16>,
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
        }
    }
}

impl StreamFinish {
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
            _ => Some("upstream_error"),
        };
        m::hot().count_request(m::door(Some(self.context.endpoint)), status, code);
        let usage = self.meter.usage();
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

    /// The stream is over (`outcome` is its status): a translator's closing events, if any,
    /// are the last chunk; the usage is recorded when `finish` drops.
    fn end(&mut self, outcome: u16) -> Option<Bytes> {
        let mut finish = self.finish.take()?;
        finish.outcome = Some(outcome);
        let mut out = Vec::new();
        if let Meter::Translate(translator) = &mut finish.meter {
            translator.finish(&mut out);
        }
        if out.is_empty() {
            return None;
        }
        finish.first_byte_sent();
        Some(Bytes::from(out))
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
                    match &mut finish.meter {
                        Meter::Scan(scanner) => {
                            scanner.feed(&chunk);
                            if !chunk.is_empty() {
                                finish.first_byte_sent();
                            }
                            return Poll::Ready(Some(Ok(chunk)));
                        }
                        Meter::Translate(translator) => {
                            let mut out = Vec::new();
                            translator.feed(&chunk, &mut out);
                            // A chunk that completed no event gives the client nothing yet.
                            if !out.is_empty() {
                                finish.first_byte_sent();
                                return Poll::Ready(Some(Ok(Bytes::from(out))));
                            }
                        }
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
