//! A provider's response body, read with an idle timeout.
//!
//! The timeout is the longest silence between two frames, not a deadline for the whole body:
//! a stream that keeps talking may run for as long as it likes. A timer is not re-armed on
//! every chunk (that would touch the timer wheel per chunk of every stream); the body notes
//! when data last arrived and, when the timer fires, either pushes it to that moment plus the
//! idle limit or gives up.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::conn::H1Body;
use crate::health::InFlight;

/// Why a body could not be read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the provider went silent for longer than the idle timeout")]
    Idle,
    #[error("the provider's connection failed mid-body")]
    Broken,
    #[error("the provider's body is larger than allowed")]
    TooLarge,
}

pub struct UpstreamBody {
    inner: H1Body,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    last_data: Instant,
    /// Counts the request in flight to its provider (`least_latency`) until the body is
    /// dropped, read to its end or not.
    _in_flight: Option<InFlight>,
}

impl UpstreamBody {
    pub(crate) fn new(inner: H1Body, idle: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            last_data: now,
            _in_flight: None,
        }
    }

    /// Keeps `in_flight` until the body is dropped.
    pub(crate) fn counted(mut self, in_flight: InFlight) -> Self {
        self._in_flight = Some(in_flight);
        self
    }

    /// The next chunk of data (never empty); `None` at the end. Trailers are skipped.
    pub fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, BodyError>>> {
        loop {
            match self.inner.poll_chunk(cx) {
                Poll::Ready(Some(Ok(data))) => {
                    self.last_data = Instant::now();
                    return Poll::Ready(Some(Ok(data)));
                }
                Poll::Ready(Some(Err(_))) => return Poll::Ready(Some(Err(BodyError::Broken))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            // Nothing to read. The timer keeps the deadline it had; only when it fires is the
            // silence measured, and the timer moved to the real deadline if data came since.
            ready!(self.timer.as_mut().poll(cx));
            let deadline = self.last_data + self.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(Some(Err(BodyError::Idle)));
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    /// Reads the whole body, refusing one larger than `limit` bytes. A body that arrives in
    /// one chunk (the common case) is returned without a copy.
    pub async fn read_all(mut self, limit: usize) -> Result<Bytes, BodyError> {
        let mut first: Option<Bytes> = None;
        let mut rest = BytesMut::new();
        let mut total = 0usize;
        while let Some(chunk) = std::future::poll_fn(|cx| self.poll_chunk(cx)).await {
            let chunk = chunk?;
            total = total.saturating_add(chunk.len());
            if total > limit {
                return Err(BodyError::TooLarge);
            }
            if first.is_none() && rest.is_empty() {
                first = Some(chunk);
                continue;
            }
            if let Some(head) = first.take() {
                rest.extend_from_slice(&head);
            }
            rest.extend_from_slice(&chunk);
        }
        Ok(first.unwrap_or_else(|| rest.freeze()))
    }
}

impl Stream for UpstreamBody {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_chunk(cx)
    }
}
