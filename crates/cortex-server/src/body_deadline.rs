//! Request bodies with a deadline, so a client that trickles a body cannot hold a connection
//! (and its slot under `CORTEX_MAX_CONNECTIONS`) for as long as it likes.
//!
//! hyper bounds the time to a request's head, not its body. [`DeadlineBody`] gives the body
//! `CORTEX_BODY_READ_TIMEOUT_SEC` from the moment a read first has to wait; a body that is
//! already there when the handler reads it (nearly every JSON request) never arms a timer, so
//! the common case costs nothing. Past the deadline the read fails with [`BodyTimedOut`], which
//! handlers answer with 408 `request_timeout`; the unread rest of the body means hyper closes
//! the connection after that answer.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::BoxError;
use cortex_gateway::request_meta::BodyTimedOut;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

pub struct DeadlineBody {
    inner: Incoming,
    timeout: Duration,
    /// Armed the first time a read has to wait.
    timer: Option<Pin<Box<Sleep>>>,
}

impl DeadlineBody {
    pub fn new(inner: Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            timer: None,
        }
    }
}

impl HttpBody for DeadlineBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(frame.map(|f| f.map_err(BoxError::from))),
            Poll::Pending => {
                let timeout = this.timeout;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
