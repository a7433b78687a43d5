//! Streaming pass-through: each upstream chunk goes to the client as it arrives, unchanged and
//! uncopied, while the SSE scanner reads usage from it. When the stream ends — normally, on an
//! upstream error, or because the client went away and the body was dropped — the usage record
//! is written and the concurrency slot freed, exactly once.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Bytes;
use cortex_limits::SlotGuard;
use cortex_upstream::{ModelRoute, UpstreamBody};
use cortex_wire::SseUsageScanner;
use futures_util::Stream;

use crate::metrics as m;

use axum::body::Body;
use axum::http::{header, HeaderName, HeaderValue};
use axum::response::Response;

use super::meter::{answer_with_room, UsageContext};

const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");

/// A stream: passed through chunk by chunk; its usage is recorded when it ends. The strings
/// move to the stream's context, which leaves `context` finished: the error path must not
/// record a second usage row for this request.
pub(super) fn streamed(
    context: &mut UsageContext,
    route: Arc<ModelRoute>,
    slot: Option<SlotGuard>,
    body: UpstreamBody,
) -> Response {
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
        },
        route,
        slot,
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

/// Runs once when the stream is finished or dropped.
pub struct StreamFinish {
    context: UsageContext,
    route: Arc<ModelRoute>,
    scanner: SseUsageScanner,
    /// Released on drop, which frees the slot for the key's next stream.
    _slot: Option<SlotGuard>,
    outcome: Option<u16>,
}

impl StreamFinish {
    pub fn new(context: UsageContext, route: Arc<ModelRoute>, slot: Option<SlotGuard>) -> Self {
        m::hot().active_streams.increment(1.0);
        Self {
            context,
            route,
            scanner: SseUsageScanner::new(),
            _slot: slot,
            outcome: None,
        }
    }
}

impl Drop for StreamFinish {
    fn drop(&mut self) {
        m::hot().active_streams.decrement(1.0);
        // 499: the client closed the connection before the stream ended (nginx's convention).
        let status = self.outcome.unwrap_or(499);
        let usage = self.scanner.usage();
        self.context.finish(Some(&self.route), status, usage);
    }
}

pub struct MeteredStream {
    inner: UpstreamBody,
    finish: Option<StreamFinish>,
}

impl MeteredStream {
    pub fn new(inner: UpstreamBody, finish: StreamFinish) -> Self {
        Self {
            inner,
            finish: Some(finish),
        }
    }
}

impl Stream for MeteredStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.inner.poll_chunk(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                if let Some(finish) = self.finish.as_mut() {
                    finish.scanner.feed(&chunk);
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(error))) => {
                tracing::warn!(%error, "upstream stream failed mid-way");
                metrics::counter!(m::UPSTREAM_ERRORS, "kind" => "stream").increment(1);
                if let Some(mut finish) = self.finish.take() {
                    finish.outcome = Some(502);
                }
                Poll::Ready(Some(Err(std::io::Error::other("upstream stream failed"))))
            }
            Poll::Ready(None) => {
                if let Some(mut finish) = self.finish.take() {
                    finish.outcome = Some(200);
                }
                Poll::Ready(None)
            }
        }
    }
}
